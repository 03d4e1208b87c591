//! Keeps the trust bundle: the master ConfigMap from the issuer's CA Secret,
//! and a copy of its PEM in every namespace with injected workloads.
//!
//! [`reconcile_trust`] works on a [`Snapshot`] of what the controller's
//! caches hold (the CA Secret, the master, every `kube-mtls-trust`, the
//! namespaces with managed Certificates) and only writes: the master when the
//! merge ([`super::bundle::merge`]) or an early retirement changed it (with
//! its resourceVersion, so two webhook replicas never overwrite each other's
//! merge), and each namespace's ConfigMap whose PEM differs. A reconcile that
//! changes nothing sends nothing.
//!
//! [`start`] keeps the caches (watches on the CA Secret and the ConfigMaps;
//! the Certificate controller's store; the issuer is read on each pass), and
//! reconciles once they are listed, on every change, and every minute (for
//! retentions that end, and namespaces that get their first Certificate).
//! Every replica runs it: they compute the same bundle from the same master.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::bundle::{self, Bundle, Retirement, retire, retire_requests};
use super::issuer::{CaSecretRef, NotCa, ca_certs, ca_secret};
use super::{TrustShared, TrustView};
use crate::certificate::{FIELD_MANAGER, MANAGED_BY};
use crate::events::Recorder;
use crate::profile::IssuerRef;
use kube_mtls_contract::names::{
    TRUST_BUNDLE_KEY, TRUST_CONFIGMAP, TRUST_MASTER_CONFIGMAP, TRUST_RETIRE,
};

/// What keeping the bundle needs.
pub struct TrustContext {
    pub client: Client,
    /// The webhook's namespace: where the master lives.
    pub namespace: String,
    /// `--issuer`.
    pub issuer: IssuerRef,
    /// `--cluster-resource-namespace`.
    pub cluster_resource_namespace: String,
    /// `--cert-duration` in seconds: the shortest retention of a previous CA.
    pub min_retention: i64,
    pub shared: Arc<TrustShared>,
    /// Warnings on the issuer when its CA cannot be read.
    pub events: Option<Recorder>,
}

/// What the caches hold at one reconcile.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The issuer's CA Secret; `None` when it does not exist (yet).
    pub ca_secret: Option<Secret>,
    pub master: Option<ConfigMap>,
    /// `kube-mtls-trust` of every namespace that has one.
    pub configmaps: Vec<ConfigMap>,
    /// Namespaces with Certificates the webhook manages (injected workloads).
    pub namespaces: BTreeSet<String>,
    /// The longest workload certificate lifetime, in seconds.
    pub retention: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// What a reconcile did, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TrustOutcome {
    /// The master was written.
    pub master: bool,
    /// Namespaces whose `kube-mtls-trust` was written.
    pub namespaces: Vec<String>,
    /// The CAs in the bundle now.
    pub cas: usize,
}

/// One reconcile at `now` (seconds since the epoch).
pub async fn reconcile_trust(
    ctx: &TrustContext,
    snap: &Snapshot,
    now: i64,
) -> Result<TrustOutcome, TrustError> {
    let master_data = snap
        .master
        .as_ref()
        .and_then(|m| m.data.clone())
        .unwrap_or_default();
    let (stored, warnings) = Bundle::from_data(&master_data);
    for w in warnings {
        tracing::warn!(configmap = TRUST_MASTER_CONFIGMAP, "{w}");
    }
    let next = next_bundle(&stored, snap, now);
    let mut outcome = TrustOutcome {
        cas: next.cas.len(),
        ..TrustOutcome::default()
    };
    let data = next.data();
    if !next.cas.is_empty() && (snap.master.is_none() || data != master_data) {
        let rv = snap.master.as_ref().and_then(|m| m.resource_version());
        apply_master(ctx, &next, rv).await?;
        log_changes(&stored, &next);
        outcome.master = true;
    }
    if next.cas.is_empty() {
        return Ok(outcome);
    }
    let pem = next.pem();
    ctx.shared.set_bundle(pem.clone());
    outcome.namespaces = distribute(ctx, snap, &pem).await?;
    Ok(outcome)
}

/// The master's next content: merged with what the CA Secret holds, then
/// without the previous CAs the master's retire annotation names.
fn next_bundle(stored: &Bundle, snap: &Snapshot, now: i64) -> Bundle {
    let seen = match snap.ca_secret.as_ref().map(ca_certs) {
        Some(Ok(certs)) => certs,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "the issuer's CA Secret cannot be read; the trust bundle stays as it is");
            Vec::new()
        }
        None => Vec::new(),
    };
    let merged = bundle::merge(stored, &seen, now, snap.retention);
    let requests = snap
        .master
        .as_ref()
        .and_then(|m| m.annotations().get(TRUST_RETIRE).cloned())
        .map(|v| retire_requests(&v))
        .unwrap_or_default();
    let (out, notes) = retire(&merged, &requests);
    for note in notes {
        match note {
            Retirement::Retired { .. } => tracing::info!("{note}"),
            Retirement::Unknown(_) => tracing::debug!("{note}"),
            _ => tracing::warn!("{note}"),
        }
    }
    out
}

fn log_changes(before: &Bundle, after: &Bundle) {
    for (fp, e) in &after.cas {
        let was = before.cas.get(fp).map(|b| b.retain);
        if was != Some(e.retain) {
            let r = e.record();
            tracing::info!(fingerprint = %fp, subject = %r.subject, retain_until = %r.retain_until, "trust bundle: CA added or its retention changed");
        }
    }
    for (fp, e) in &before.cas {
        if !after.cas.contains_key(fp) {
            tracing::info!(fingerprint = %fp, subject = %e.ca.subject, "trust bundle: CA removed (its retention ended, or retired)");
        }
    }
}

/// The master ConfigMap as server-side apply sends it.
pub fn master_object(namespace: &str, b: &Bundle, resource_version: Option<String>) -> Value {
    let mut obj = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": TRUST_MASTER_CONFIGMAP,
            "namespace": namespace,
            "labels": {MANAGED_BY.0: MANAGED_BY.1},
        },
        "data": b.data(),
    });
    if let Some(rv) = resource_version {
        obj["metadata"]["resourceVersion"] = json!(rv);
    }
    obj
}

/// A namespace's `kube-mtls-trust` as server-side apply sends it.
pub fn namespace_object(namespace: &str, pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": TRUST_CONFIGMAP,
            "namespace": namespace,
            "labels": {MANAGED_BY.0: MANAGED_BY.1},
        },
        "data": {TRUST_BUNDLE_KEY: pem},
    })
}

async fn apply_master(
    ctx: &TrustContext,
    b: &Bundle,
    rv: Option<String>,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let obj = master_object(&ctx.namespace, b, rv);
    api.patch(TRUST_MASTER_CONFIGMAP, &params, &Patch::Apply(obj))
        .await?;
    Ok(())
}

/// Creates or updates the `kube-mtls-trust` of `namespace` with `pem`.
pub async fn ensure_namespace_configmap(
    client: &Client,
    namespace: &str,
    pem: &str,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(
        TRUST_CONFIGMAP,
        &params,
        &Patch::Apply(namespace_object(namespace, pem)),
    )
    .await?;
    Ok(())
}

/// Writes `pem` to every namespace's `kube-mtls-trust` that differs or is
/// missing: namespaces with managed Certificates, and those that have one.
async fn distribute(
    ctx: &TrustContext,
    snap: &Snapshot,
    pem: &str,
) -> Result<Vec<String>, kube::Error> {
    let have: BTreeMap<String, Option<&String>> = snap
        .configmaps
        .iter()
        .filter_map(|c| {
            let pem = c.data.as_ref().and_then(|d| d.get(TRUST_BUNDLE_KEY));
            Some((c.namespace()?, pem))
        })
        .collect();
    let targets: BTreeSet<&String> = snap.namespaces.iter().chain(have.keys()).collect();
    let mut written = Vec::new();
    for ns in targets {
        if *ns == ctx.namespace || have.get(ns).copied().flatten().map(String::as_str) == Some(pem)
        {
            continue;
        }
        ensure_namespace_configmap(&ctx.client, ns, pem).await?;
        tracing::info!(namespace = %ns, configmap = TRUST_CONFIGMAP, "trust bundle written");
        written.push(ns.clone());
    }
    Ok(written)
}

/// The ClusterIssuer / Issuer kind as an API resource.
pub fn issuer_resource(kind: &str) -> ApiResource {
    let plural = format!("{}s", kind.to_ascii_lowercase());
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", kind),
        &plural,
    )
}

/// Where the issuer's CA is, as far as the controller can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    Ca(CaSecretRef),
    /// Not a CA issuer: pods get `secret` (said once, see [`fallback_message`]).
    NotCa,
    /// The issuer cannot be read now: keep what was known.
    Unknown,
}

/// Reads the issuer (one GET, outside admission) and decides where its CA is.
pub async fn locate_ca(ctx: &TrustContext) -> Located {
    if ctx.issuer.kind != "ClusterIssuer" {
        let why = NotCa::Namespaced {
            issuer: ctx.issuer.to_string(),
        };
        fall_back(ctx, None, &why).await;
        return Located::NotCa;
    }
    let api: Api<DynamicObject> =
        Api::all_with(ctx.client.clone(), &issuer_resource(&ctx.issuer.kind));
    let obj = match api.get_opt(&ctx.issuer.name).await {
        Ok(Some(obj)) => obj,
        Ok(None) => {
            tracing::warn!(issuer = %ctx.issuer, "the --issuer (KUBE_MTLS_ISSUER) does not exist (yet); the trust bundle stays as it is");
            return Located::Unknown;
        }
        Err(e) => {
            tracing::warn!(issuer = %ctx.issuer, error = %e, "cannot read the --issuer (KUBE_MTLS_ISSUER); the trust bundle stays as it is. Fix: the webhook's RBAC must allow get on it (the chart's rbac.yaml grants it for issuer.name)");
            return Located::Unknown;
        }
    };
    let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
    match ca_secret(&ctx.issuer, &spec, &ctx.cluster_resource_namespace) {
        Ok(r) => Located::Ca(r),
        Err(why) => {
            fall_back(ctx, Some(&obj), &why).await;
            Located::NotCa
        }
    }
}

async fn fall_back(ctx: &TrustContext, obj: Option<&DynamicObject>, why: &NotCa) {
    let reason = fallback_message(why);
    if !ctx.shared.set_fallback(reason.clone()) {
        return;
    }
    tracing::warn!("{reason}");
    if let (Some(rec), Some(obj)) = (&ctx.events, obj) {
        let reference = ObjectReference {
            api_version: Some("cert-manager.io/v1".into()),
            kind: Some(ctx.issuer.kind.clone()),
            name: obj.metadata.name.clone(),
            namespace: obj.metadata.namespace.clone(),
            uid: obj.metadata.uid.clone(),
            ..Default::default()
        };
        rec.warn_on(&reference, "TrustBundleUnavailable", &reason)
            .await;
    }
}

/// The log line and Event of a fallback to `secret`: the flag, its variable, the fix.
pub fn fallback_message(why: &NotCa) -> String {
    format!(
        "--trust-bundle-source=configmap (KUBE_MTLS_TRUST_BUNDLE_SOURCE): {why}. Injected pods trust their own Secret's ca.crt instead (as with --trust-bundle-source=secret), so rotating that CA cuts traffic until every workload is re-issued. Fix: use a cert-manager CA issuer (ClusterIssuer with spec.ca) for --issuer, or set --trust-bundle-source=secret (chart value trustBundle.source=secret) to say this is intended"
    )
}

/// The longest lifetime of the managed Certificates (recorded
/// `kube-mtls.io/duration`, else `spec.duration`), at least `min` seconds.
pub fn longest_lifetime(certificates: &[Arc<DynamicObject>], min: i64) -> i64 {
    certificates
        .iter()
        .filter_map(|c| {
            let recorded = c.annotations().get("kube-mtls.io/duration").cloned();
            let spec = || {
                c.data
                    .pointer("/spec/duration")?
                    .as_str()
                    .map(str::to_owned)
            };
            go_duration(&recorded.or_else(spec)?)
        })
        .fold(min, i64::max)
}

/// A Go duration (`24h`, `2160h0m0s`, `90m`) in seconds.
pub fn go_duration(text: &str) -> Option<i64> {
    let mut total = 0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, tail) = rest.split_at(split);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3_600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += num.parse::<f64>().ok()? * scale;
        rest = next;
    }
    Some(total.ceil() as i64)
}

/// The caches the controller reads.
struct Caches {
    master: Store<ConfigMap>,
    configmaps: Store<ConfigMap>,
    certificates: Store<DynamicObject>,
}

/// Starts the watches; returns what admission reads and the loop to run.
pub fn start(
    ctx: TrustContext,
    certificates: Store<DynamicObject>,
) -> (TrustView, impl std::future::Future<Output = ()>) {
    let notify = Arc::new(Notify::new());
    let client = ctx.client.clone();
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    let master = watch(
        Api::<ConfigMap>::namespaced(client.clone(), &ctx.namespace),
        by_name(TRUST_MASTER_CONFIGMAP),
        &notify,
    );
    let configmaps = watch(
        Api::<ConfigMap>::all(client),
        by_name(TRUST_CONFIGMAP),
        &notify,
    );
    let view = TrustView {
        shared: ctx.shared.clone(),
        configmaps: configmaps.clone(),
    };
    let caches = Caches {
        master,
        configmaps,
        certificates,
    };
    (view, run(ctx, caches, notify))
}

/// A reflector of `api` kept by a spawned task, which wakes `notify` on every event.
fn watch<K>(api: Api<K>, config: watcher::Config, notify: &Arc<Notify>) -> Store<K>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    let n = notify.clone();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(stream.for_each(move |ev| {
        if let Err(e) = &ev {
            tracing::debug!(error = %e, "trust bundle watch");
        }
        n.notify_one();
        futures::future::ready(())
    }));
    store
}

/// The CA Secret's watch, restarted when the issuer names another Secret.
struct SecretWatch {
    at: CaSecretRef,
    store: Store<Secret>,
    task: tokio::task::JoinHandle<()>,
}

async fn run(ctx: TrustContext, caches: Caches, notify: Arc<Notify>) {
    wait_for_caches(&caches).await;
    let mut secret: Option<SecretWatch> = None;
    loop {
        match locate_ca(&ctx).await {
            Located::Ca(at) if secret.as_ref().map(|s| &s.at) != Some(&at) => {
                if let Some(old) = secret.take() {
                    old.task.abort();
                }
                let s = start_secret_watch(&ctx.client, at, &notify);
                let _ =
                    tokio::time::timeout(Duration::from_secs(15), s.store.wait_until_ready()).await;
                secret = Some(s);
            }
            Located::NotCa => {
                if let Some(old) = secret.take() {
                    old.task.abort();
                }
            }
            Located::Ca(_) | Located::Unknown => {}
        }
        if ctx.shared.fallback().is_none() || secret.is_some() {
            let snap = snapshot(&ctx, &caches, secret.as_ref());
            let now = k8s_openapi::jiff::Timestamp::now().as_second();
            match reconcile_trust(&ctx, &snap, now).await {
                Ok(o) if o.master || !o.namespaces.is_empty() => {
                    tracing::info!(cas = o.cas, namespaces = ?o.namespaces, "trust bundle reconciled")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "trust bundle reconcile failed; retrying"),
            }
        }
        ctx.shared.settle();
        let _ = tokio::time::timeout(Duration::from_secs(60), notify.notified()).await;
        // Let a burst of events (a rotation touches several objects) settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Until the master, the ConfigMaps and the Certificates are listed: a
/// master not seen yet must never be taken for a missing one (the merge would
/// start over and forget the previous CAs).
async fn wait_for_caches(caches: &Caches) {
    loop {
        let ready = async {
            caches.master.wait_until_ready().await.is_ok()
                && caches.configmaps.wait_until_ready().await.is_ok()
                && caches.certificates.wait_until_ready().await.is_ok()
        };
        match tokio::time::timeout(Duration::from_secs(30), ready).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!("a trust bundle cache was dropped; the trust bundle is not kept");
                std::future::pending::<()>().await;
            }
            Err(_) => tracing::warn!(
                "the trust bundle's ConfigMaps or the Certificates cannot be listed yet; meanwhile pods trust their own Secret's ca.crt. Fix: the webhook's RBAC must allow get, list and watch on the ConfigMaps kube-mtls-trust and kube-mtls-trust-bundle (the chart's rbac.yaml)"
            ),
        }
    }
}

fn start_secret_watch(client: &Client, at: CaSecretRef, notify: &Arc<Notify>) -> SecretWatch {
    let (store, writer) = reflector::store::<Secret>();
    let api: Api<Secret> = Api::namespaced(client.clone(), &at.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", at.name));
    let n = notify.clone();
    let name = at.to_string();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let task = tokio::spawn(stream.for_each(move |ev| {
        if let Err(e) = &ev {
            tracing::warn!(error = %e, secret = %name, "cannot watch the issuer's CA Secret: the webhook's RBAC must allow get, list and watch on it (chart value trustBundle.caSecretName names it)");
        }
        n.notify_one();
        futures::future::ready(())
    }));
    tracing::info!(secret = %at, "watching the issuer's CA Secret for the trust bundle");
    SecretWatch { at, store, task }
}

fn snapshot(ctx: &TrustContext, caches: &Caches, secret: Option<&SecretWatch>) -> Snapshot {
    let certificates = caches.certificates.state();
    Snapshot {
        ca_secret: secret.and_then(|s| s.store.state().first().map(|s| (**s).clone())),
        master: caches.master.state().first().map(|m| (**m).clone()),
        configmaps: caches
            .configmaps
            .state()
            .iter()
            .map(|c| (**c).clone())
            .collect(),
        namespaces: certificates.iter().filter_map(|c| c.namespace()).collect(),
        retention: longest_lifetime(&certificates, ctx.min_retention),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_as_cert_manager_writes_them() {
        assert_eq!(go_duration("24h"), Some(86_400));
        assert_eq!(go_duration("2160h0m0s"), Some(2160 * 3_600));
        assert_eq!(go_duration("1h30m"), Some(5_400));
        assert_eq!(go_duration("1.5h"), Some(5_400));
        assert_eq!(go_duration("500ms"), Some(1));
        assert_eq!(go_duration(""), None);
        assert_eq!(go_duration("forever"), None);
        assert_eq!(go_duration("10d"), None);
    }

    #[test]
    fn the_longest_recorded_lifetime_wins_and_the_flag_is_the_floor() {
        let cert = |ann: Option<&str>, spec: &str| -> Arc<DynamicObject> {
            let mut o = json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                "metadata": {"name": "c", "namespace": "shop"}, "spec": {"duration": spec}});
            if let Some(d) = ann {
                o["metadata"]["annotations"] = json!({"kube-mtls.io/duration": d});
            }
            Arc::new(serde_json::from_value(o).expect("a Certificate"))
        };
        let certs = [
            cert(Some("720h"), "24h"),
            cert(None, "48h"),
            cert(None, "junk"),
        ];
        assert_eq!(longest_lifetime(&certs, 86_400), 720 * 3_600);
        assert_eq!(longest_lifetime(&certs[1..], 86_400), 48 * 3_600);
        assert_eq!(longest_lifetime(&[], 86_400), 86_400);
    }

    #[test]
    fn the_fallback_names_the_flag_its_variable_and_the_fix() {
        let why = NotCa::OtherKind {
            issuer: "ClusterIssuer/vault".into(),
            kinds: "vault".into(),
        };
        let m = fallback_message(&why);
        for needle in [
            "--trust-bundle-source",
            "KUBE_MTLS_TRUST_BUNDLE_SOURCE",
            "Fix:",
            "trustBundle.source=secret",
            "ClusterIssuer/vault",
        ] {
            assert!(m.contains(needle), "{needle}: {m}");
        }
    }
}
