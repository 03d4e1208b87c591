//! Injected workloads, read from their pods: every pod the webhook injected
//! (it carries `kube-mtls.io/status`) is grouped under its owning workload,
//! and the workload's settings are resolved from its annotations and
//! MtlsProfiles by the webhook's own resolution, with the webhook's flags as
//! defaults, so `status` and `policy` say what the webhook decided.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::Value;

use crate::certs;
use crate::check::webhook::sidecar;
use crate::contract::{
    ClusterView, INIT_NAME, MODE, MtlsProfile, POLICY, Resolved, SIDECAR_NAME, STATUS,
    VALIDATE_NAME, WebhookFlags, certificate_name, certificate_resource, resolve,
};
use crate::install;

/// Which pods to read.
#[derive(Debug, Clone)]
pub enum Scope {
    Namespace(String),
    All,
}

/// One pod of a workload.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub name: String,
    /// The sidecar image it runs.
    pub sidecar_image: String,
    /// It runs another image than the webhook injects now: it needs a restart.
    pub outdated: bool,
}

/// An injected workload and what it resolved to.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub namespace: String,
    /// `Deployment`, `StatefulSet`, `Job`, ... or `Pod` for a bare pod.
    pub kind: String,
    pub name: String,
    pub service_account: String,
    pub identity: String,
    pub trust_domain: String,
    /// `strict` or `permissive`.
    pub mode: String,
    /// `enforce` or `audit`.
    pub policy: String,
    /// Empty: any identity in the trust domain.
    pub allowed_clients: Vec<String>,
    /// DNS names in its certificate, besides the SPIFFE ID.
    pub dns_names: Vec<String>,
    pub profile: Option<String>,
    /// Seconds since the epoch; `None` when not issued (yet) or unreadable.
    pub certificate_not_after: Option<i64>,
    pub pods: Vec<PodInfo>,
    /// Why its annotations no longer resolve (e.g. its profile was deleted).
    pub error: Option<String>,
}

impl Workload {
    /// `namespace/name`, as `--for` takes it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn outdated_pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.iter().filter(|p| p.outdated)
    }
}

/// Everything `status` and `policy` show.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// What the webhook injects now.
    pub webhook: WebhookFlags,
    pub workloads: Vec<Workload>,
}

/// Reads the injected workloads in `scope`.
pub async fn read(client: &Client, scope: &Scope) -> Result<Inventory, kube::Error> {
    let flags = match install::discover(client).await {
        Ok(Some(i)) => i.flags,
        Ok(None) | Err(_) => WebhookFlags::defaults(),
    };
    let pods: Api<Pod> = match scope {
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        Scope::All => Api::all(client.clone()),
    };
    let pods: Vec<Pod> = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.annotations().contains_key(STATUS))
        .collect();
    let profiles = Api::<MtlsProfile>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let view = ClusterView::Fixed {
        profiles,
        namespaces,
    };
    let mut groups: BTreeMap<(String, String, String), Vec<Pod>> = BTreeMap::new();
    for p in pods {
        let (kind, name) = owner(&p);
        groups
            .entry((p.namespace().unwrap_or_default(), kind, name))
            .or_default()
            .push(p);
    }
    let mut workloads = Vec::new();
    for ((ns, kind, name), mut pods) in groups {
        pods.sort_by_key(|p| std::cmp::Reverse(p.creation_timestamp()));
        let mut w = workload(&ns, kind, name, &pods, &view, &flags);
        w.certificate_not_after = certificate_expiry(client, &w, &pods[0], &view, &flags).await;
        workloads.push(w);
    }
    Ok(Inventory {
        webhook: flags,
        workloads,
    })
}

/// The workload owning a pod: a ReplicaSet's Deployment by the pod-template-hash rule.
fn owner(p: &Pod) -> (String, String) {
    let Some(o) = p
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    else {
        return ("Pod".into(), p.name_any());
    };
    if o.kind == "ReplicaSet"
        && let Some(hash) = p.labels().get("pod-template-hash")
        && let Some(deploy) = o.name.strip_suffix(&format!("-{hash}"))
    {
        return ("Deployment".into(), deploy.to_owned());
    }
    (o.kind.clone(), o.name.clone())
}

/// The pod as submitted: without the containers the webhook added (in
/// either redirect mode: `kube-mtls-init`, or CNI mode's check).
fn as_submitted(p: &Pod) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    for list in ["containers", "initContainers"] {
        if let Some(cs) = v
            .pointer_mut(&format!("/spec/{list}"))
            .and_then(Value::as_array_mut)
        {
            cs.retain(|c| {
                ![SIDECAR_NAME, INIT_NAME, VALIDATE_NAME]
                    .contains(&c["name"].as_str().unwrap_or(""))
            });
        }
    }
    v
}

fn resolved(
    p: &Pod,
    ns: &str,
    view: &ClusterView,
    flags: &WebhookFlags,
) -> Result<Resolved, String> {
    let defaults = flags.resolution_defaults().map_err(|e| e.to_string())?;
    resolve(&as_submitted(p), ns, view, &defaults)
        .map(|(r, _)| r)
        .map_err(|e| e.to_string())
}

fn workload(
    ns: &str,
    kind: String,
    name: String,
    pods: &[Pod],
    view: &ClusterView,
    flags: &WebhookFlags,
) -> Workload {
    let newest = &pods[0];
    let ann = newest.annotations();
    let pick = |key: &str, default: &str| {
        ann.get(key)
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| default.to_owned())
    };
    let pods_info = pods
        .iter()
        .map(|p| {
            let image = sidecar(p).and_then(|c| c.image.clone()).unwrap_or_default();
            PodInfo {
                name: p.name_any(),
                outdated: image != flags.injection.sidecar_image,
                sidecar_image: image,
            }
        })
        .collect();
    let sa = newest
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let mut w = Workload {
        namespace: ns.to_owned(),
        kind,
        name,
        identity: String::new(),
        trust_domain: flags.injection.trust_domain.clone(),
        service_account: sa,
        mode: pick(MODE, flags.injection.default_mode.as_str()),
        policy: pick(POLICY, flags.injection.default_policy.as_str()),
        allowed_clients: Vec::new(),
        dns_names: Vec::new(),
        profile: None,
        certificate_not_after: None,
        pods: pods_info,
        error: None,
    };
    match resolved(newest, ns, view, flags) {
        Ok(r) => {
            w.identity = r.identity();
            w.trust_domain = r.trust_domain;
            w.service_account = r.service_account;
            w.allowed_clients = r
                .allowed_clients
                .0
                .iter()
                .map(ToString::to_string)
                .collect();
            w.dns_names = r.dns_names;
            w.profile = r.profile;
            w.mode = r.mode.as_str().to_owned();
            w.policy = r.policy.as_str().to_owned();
        }
        Err(e) => w.error = Some(e),
    }
    w
}

/// When the workload's certificate expires: its Certificate's `status.notAfter`,
/// or for a Secret the pod names itself, that Secret's `tls.crt`.
async fn certificate_expiry(
    client: &Client,
    w: &Workload,
    pod: &Pod,
    view: &ClusterView,
    flags: &WebhookFlags,
) -> Option<i64> {
    let own_secret = resolved(pod, &w.namespace, view, flags)
        .ok()
        .and_then(|r| r.secret);
    if let Some(secret) = own_secret {
        let s = Api::<Secret>::namespaced(client.clone(), &w.namespace)
            .get(&secret)
            .await
            .ok()?;
        let pem = s.data?.get("tls.crt")?.0.clone();
        let certs = certs::pem_certs(&pem, "tls.crt").ok()?;
        return certs::not_after(certs.first()?).ok();
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &w.namespace, &certificate_resource());
    let cert = api
        .get_opt(&certificate_name(&w.service_account))
        .await
        .ok()??;
    certs::rfc3339(cert.data.pointer("/status/notAfter")?.as_str()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Defaults, INJECT};
    use kube_mtls_webhook::admission::{Decision, decide};
    use kube_mtls_webhook::cli::unset_defaults;
    use kube_mtls_webhook::patch::apply;
    use serde_json::json;

    fn names(v: &Value, list: &str) -> Vec<String> {
        v["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn a_pod_injected_in_either_mode_reads_back_as_submitted() {
        let submitted = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "orders", "namespace": "shop", "annotations": {INJECT: "enabled"}},
            "spec": {"initContainers": [{"name": "migrate", "image": "m"}],
                "containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 8080}]}]},
        });
        for cni in [false, true] {
            for native in [false, true] {
                let defaults = Defaults {
                    cni_mode: cni,
                    ..unset_defaults(native)
                };
                let view = ClusterView::empty();
                let Decision::Inject(b) = decide(&submitted, "shop", "kube-mtls", &view, &defaults)
                else {
                    panic!("not injected");
                };
                let injected = apply(&submitted, &b.0.ops).expect("the patch applies");
                let first = if cni { VALIDATE_NAME } else { INIT_NAME };
                assert_eq!(names(&injected, "initContainers")[0], first);
                let pod: Pod = serde_json::from_value(injected).expect("a Pod");
                let back = as_submitted(&pod);
                for list in ["initContainers", "containers"] {
                    assert_eq!(
                        names(&back, list),
                        names(&submitted, list),
                        "cni {cni}, native {native}: {list}"
                    );
                }
            }
        }
    }
}
