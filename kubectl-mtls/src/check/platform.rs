//! What kube-mtls stands on: the API server's version (native sidecars or the
//! regular-container fallback), cert-manager, the issuers that sign workload
//! certificates, and the `MtlsProfile` CRD.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{CustomResourceExt, Resource};
use serde_json::Value;

use super::{Cluster, Line, api_error};
use crate::contract::{IssuerRef, MtlsProfile, NATIVE_SIDECAR_MINOR, has_native_sidecars};

const CERT_MANAGER: &str = "cert-manager.io/v1";

/// The API server's version and the sidecar mode it allows.
pub async fn api_server(c: &Cluster) -> Line {
    const CHECK: &str = "api-server";
    let info = match c.client.apiserver_version().await {
        Ok(i) => i,
        Err(e) => {
            return Line::fail(
                CHECK,
                format!("cannot read the API server's version: {}", api_error(&e)),
                "check the kubeconfig's server and credentials (kubectl version)",
            );
        }
    };
    let native = has_native_sidecars(&info);
    let flag = c
        .install
        .as_ref()
        .and_then(|i| i.flags.injection.native_sidecar.explicit());
    let v = &info.git_version;
    match (native, flag) {
        (true, Some(false)) => Line::warn(
            CHECK,
            format!(
                "Kubernetes {v} has native sidecars, but the webhook runs with --native-sidecar=false: the sidecar is a regular container"
            ),
            "helm upgrade ... --set nativeSidecar=auto",
        ),
        (true, _) => Line::pass(
            CHECK,
            format!("Kubernetes {v}: native sidecars (init container with restartPolicy Always)"),
        ),
        (false, Some(true)) => Line::fail(
            CHECK,
            format!(
                "Kubernetes {v} has no native sidecars (1.{NATIVE_SIDECAR_MINOR}+), but the webhook runs with --native-sidecar=true: injected pods never start"
            ),
            "helm upgrade ... --set nativeSidecar=auto",
        ),
        (false, _) => Line::warn(
            CHECK,
            format!(
                "Kubernetes {v}: no native sidecars, so the fallback applies: the sidecar is a regular container, and init containers run before it"
            ),
            format!("upgrade to Kubernetes 1.{NATIVE_SIDECAR_MINOR} or later for native sidecars"),
        ),
    }
}

/// cert-manager's API is served.
pub async fn cert_manager(c: &Cluster) -> Line {
    const CHECK: &str = "cert-manager";
    let fix = "install cert-manager with its CRDs: helm install cert-manager oci://quay.io/jetstack/charts/cert-manager --namespace cert-manager --create-namespace --set crds.enabled=true";
    match c.client.list_api_group_resources(CERT_MANAGER).await {
        Ok(list) => {
            let have: BTreeSet<&str> = list.resources.iter().map(|r| r.name.as_str()).collect();
            let missing: Vec<&str> = ["certificates", "issuers", "clusterissuers"]
                .into_iter()
                .filter(|r| !have.contains(r))
                .collect();
            if missing.is_empty() {
                Line::pass(
                    CHECK,
                    format!("{CERT_MANAGER} is served (Certificate, Issuer, ClusterIssuer)"),
                )
            } else {
                Line::fail(
                    CHECK,
                    format!("{CERT_MANAGER} lacks {}", missing.join(", ")),
                    fix,
                )
            }
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Line::fail(
            CHECK,
            format!("cert-manager is not installed: {CERT_MANAGER} is not served"),
            fix,
        ),
        Err(e) => Line::fail(
            CHECK,
            format!("cannot read {CERT_MANAGER}: {}", api_error(&e)),
            fix,
        ),
    }
}

fn issuer_resource(kind: &str) -> ApiResource {
    let plural = format!("{}s", kind.to_ascii_lowercase());
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", kind),
        &plural,
    )
}

/// Every issuer that signs workload certificates: the webhook's `--issuer`,
/// and those MtlsProfiles name. An `Issuer` lives in each opted-in namespace.
pub async fn issuers(c: &Cluster, has_cert_manager: bool) -> Vec<Line> {
    let default = c
        .install
        .as_ref()
        .map(|i| i.flags.clone())
        .unwrap_or_else(crate::contract::WebhookFlags::defaults);
    let Ok(webhook_issuer) = default.issuer_ref() else {
        return vec![Line::fail(
            "issuer",
            format!(
                "the webhook's --issuer {:?} is not ClusterIssuer/<name> or Issuer/<name>",
                default.injection.issuer
            ),
            "helm upgrade ... --set issuer.kind=ClusterIssuer --set issuer.name=<name>",
        )];
    };
    if !has_cert_manager {
        return vec![Line::skip(
            format!("issuer {}/{}", webhook_issuer.kind, webhook_issuer.name),
            "needs cert-manager",
        )];
    }
    let mut wanted: Vec<(IssuerRef, Option<String>, bool)> = Vec::new();
    let mut add = |r: IssuerRef, ns: Option<String>, from_flag: bool| {
        if !wanted.iter().any(|(w, n, _)| *w == r && *n == ns) {
            wanted.push((r, ns, from_flag));
        }
    };
    for ns in issuer_namespaces(c, &webhook_issuer) {
        add(webhook_issuer.clone(), ns, true);
    }
    let profiles = Api::<MtlsProfile>::all(c.client.clone())
        .list(&ListParams::default())
        .await;
    for p in profiles.map(|l| l.items).unwrap_or_default() {
        if let Some(r) = p.spec.issuer.clone() {
            let ns = (r.kind == "Issuer").then(|| p.metadata.namespace.clone().unwrap_or_default());
            add(r, ns, false);
        }
    }
    let mut lines = Vec::new();
    for (r, ns, from_flag) in wanted {
        lines.push(issuer(c, &r, ns.as_deref(), from_flag).await);
    }
    lines
}

/// Where to look for the webhook's issuer: once for a ClusterIssuer, in each
/// opted-in namespace for an Issuer.
fn issuer_namespaces(c: &Cluster, r: &IssuerRef) -> Vec<Option<String>> {
    if r.kind == "ClusterIssuer" {
        vec![None]
    } else {
        c.opted_in.iter().cloned().map(Some).collect()
    }
}

async fn issuer(c: &Cluster, r: &IssuerRef, ns: Option<&str>, from_flag: bool) -> Line {
    let check = match ns {
        Some(ns) => format!("issuer {}/{} in {ns}", r.kind, r.name),
        None => format!("issuer {}/{}", r.kind, r.name),
    };
    let res = issuer_resource(&r.kind);
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(c.client.clone(), ns, &res),
        None => Api::all_with(c.client.clone(), &res),
    };
    let describe = match ns {
        Some(ns) => format!("kubectl describe issuer {} -n {ns}", r.name),
        None => format!("kubectl describe clusterissuer {}", r.name),
    };
    match api.get_opt(&r.name).await {
        Ok(Some(obj)) => {
            let (ready, why) = ready_condition(&obj.data);
            if ready {
                Line::pass(check, "Ready")
            } else {
                Line::fail(
                    check,
                    format!(
                        "not Ready: {why}; certificates it should sign are not issued and injected pods wait for their Secret"
                    ),
                    format!(
                        "{describe}; for a CA issuer, its CA Secret must exist in cert-manager's cluster resource namespace"
                    ),
                )
            }
        }
        Ok(None) if from_flag && c.install.is_none() => Line::skip(
            check,
            "not there yet: the chart creates it (workloadCA.enabled), or set issuer.kind and issuer.name to yours",
        ),
        Ok(None) => Line::fail(
            check,
            if from_flag {
                "not found: the webhook's --issuer names it".to_owned()
            } else {
                "not found: an MtlsProfile names it".to_owned()
            },
            "create the issuer, or helm upgrade ... --set workloadCA.enabled=true (the chart's CA), or --set issuer.name=<existing>",
        ),
        Err(e) => Line::fail(
            check,
            format!("cannot read it: {}", api_error(&e)),
            describe,
        ),
    }
}

/// Whether a cert-manager object's `Ready` condition is True, and else why not.
pub fn ready_condition(data: &Value) -> (bool, String) {
    let conditions = data.pointer("/status/conditions").and_then(Value::as_array);
    let ready = conditions.and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    match ready {
        Some(c) if c["status"] == "True" => (true, String::new()),
        Some(c) => (
            false,
            format!(
                "{} ({})",
                c["message"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("no reason")
            ),
        ),
        None => (false, "no Ready condition yet".into()),
    }
}

/// The `MtlsProfile` CRD is established and serves the version the webhook reads.
pub async fn crd(c: &Cluster) -> Line {
    let name = MtlsProfile::crd_name();
    let check = "crd";
    let version = MtlsProfile::version(&());
    let fix = "helm upgrade --install ... (the chart's crds/), or kubectl apply --server-side -f crds/mtlsprofile.yaml";
    match Api::<CustomResourceDefinition>::all(c.client.clone())
        .get_opt(name)
        .await
    {
        Ok(Some(crd)) => {
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            let served = crd
                .spec
                .versions
                .iter()
                .any(|v| v.name == version && v.served);
            match (established, served) {
                (true, true) => Line::pass(check, format!("{name} established, serving {version}")),
                (false, _) => Line::fail(
                    check,
                    format!("{name} is not Established"),
                    format!("kubectl describe crd {name}"),
                ),
                (true, false) => Line::fail(
                    check,
                    format!("{name} does not serve {version}, which the webhook reads"),
                    fix,
                ),
            }
        }
        Ok(None) if c.install.is_none() => Line::skip(
            check,
            format!("{name} not installed yet: helm install creates it"),
        ),
        Ok(None) => Line::fail(
            check,
            format!("{name} is not installed: MtlsProfiles cannot be read"),
            fix,
        ),
        Err(e) => Line::fail(check, format!("cannot read {name}: {}", api_error(&e)), fix),
    }
}
