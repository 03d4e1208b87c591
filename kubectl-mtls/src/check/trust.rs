//! Where a CA rotation stands (README "Rotating the workload CA"): which CAs
//! the trust bundle holds (the master ConfigMap `kube-mtls-trust-bundle` the
//! webhook's controller keeps), how many live workload certificates still
//! come from a previous CA (re-issue them before retiring it), and whether
//! any namespace's `kube-mtls-trust` lacks the CA of a live workload
//! certificate (its pods would refuse that workload).
//!
//! Workload certificates are the Secrets labelled
//! `app.kubernetes.io/managed-by=kube-mtls` (the webhook's Certificates put
//! the label on them); a certificate "comes from" the bundle CA that verifies
//! its leaf directly, else the one its chain leads to.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use rustls_pki_types::CertificateDer;

use super::{Cluster, Line, Options, api_error};
use crate::certs::{self, human};
use crate::contract::{
    Bundle, MANAGED_BY, Retain, TRUST_BUNDLE_KEY, TRUST_CONFIGMAP, TRUST_MASTER_CONFIGMAP,
    TRUST_RETIRE, TrustSource,
};

const CHECK: &str = "trust-bundle";

/// What the check reads.
struct State {
    master: Option<Bundle>,
    secrets: Vec<Secret>,
    configmaps: Vec<ConfigMap>,
}

/// A live workload certificate and the bundle CA it comes from.
struct Workload {
    /// `namespace/secret`.
    name: String,
    chain: Vec<CertificateDer<'static>>,
    /// Fingerprint of the CA in the bundle; `None`: none of them.
    ca: Option<String>,
}

/// Every trust bundle line; one skip when it does not apply.
pub async fn rotation(c: &Cluster, opts: &Options) -> Vec<Line> {
    let Some(install) = &c.install else {
        return vec![Line::skip(CHECK, "kube-mtls is not installed")];
    };
    if install.flags.injection.trust_bundle_source == TrustSource::Secret {
        return vec![Line::skip(
            CHECK,
            "--trust-bundle-source=secret: each sidecar trusts its own Secret's ca.crt, so a CA rotation cuts traffic until every workload is re-issued",
        )];
    }
    let ns = install.namespace().unwrap_or("kube-mtls");
    let state = match read(&c.client, ns).await {
        Ok(s) => s,
        Err(e) => {
            return vec![Line::fail(
                CHECK,
                format!("cannot read the trust bundle: {}", api_error(&e)),
                "run the check with permission to list configmaps and secrets in every namespace",
            )];
        }
    };
    let logs = match install.deployment_name() {
        Some(d) => {
            let (dns, name) = d.split_once('/').unwrap_or((ns, d.as_str()));
            format!("kubectl -n {dns} logs deployment/{name}")
        }
        None => format!("kubectl -n {ns} logs deployment/kube-mtls-webhook"),
    };
    let Some(bundle) = &state.master else {
        return vec![no_master(ns, &state, &logs)];
    };
    let bundle_ders = ders(bundle);
    let workloads = live_workloads(&state.secrets, &bundle_ders, opts.now);
    let mut lines = cas(bundle, ns, opts);
    lines.push(workload_line(bundle, &workloads));
    lines.extend(namespace_lines(bundle, &state, &workloads, &logs, opts.now));
    lines
}

async fn read(client: &Client, ns: &str) -> Result<State, kube::Error> {
    let configmaps: Api<ConfigMap> = Api::all(client.clone());
    let master = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(TRUST_MASTER_CONFIGMAP)
        .await?
        .map(|m| Bundle::from_data(&m.data.unwrap_or_default()).0);
    let by_name = ListParams::default().fields(&format!("metadata.name={TRUST_CONFIGMAP}"));
    let configmaps = configmaps
        .list(&by_name)
        .await?
        .items
        .into_iter()
        .filter(|c| c.name_any() == TRUST_CONFIGMAP && c.namespace().as_deref() != Some(ns))
        .collect();
    let labelled = ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let secrets = Api::<Secret>::all(client.clone())
        .list(&labelled)
        .await?
        .items;
    Ok(State {
        master,
        secrets,
        configmaps,
    })
}

fn no_master(ns: &str, state: &State, logs: &str) -> Line {
    let msg = format!(
        "no {TRUST_MASTER_CONFIGMAP} in {ns}: the webhook has no trust bundle yet, so injected pods trust their own Secret's ca.crt"
    );
    if state.secrets.is_empty() {
        return Line::skip(CHECK, format!("{msg} (no workload certificates yet)"));
    }
    Line::warn(
        CHECK,
        msg,
        format!(
            "{logs} | grep -i trust (the issuer must be a cert-manager CA ClusterIssuer whose Secret the webhook may read: chart value trustBundle.caSecretName); for another issuer set trustBundle.source=secret"
        ),
    )
}

/// The DER of each CA of the bundle, by fingerprint.
fn ders(bundle: &Bundle) -> BTreeMap<String, CertificateDer<'static>> {
    bundle
        .cas
        .iter()
        .filter_map(|(fp, e)| {
            let der = certs::pem_certs(e.ca.pem.as_bytes(), "the trust bundle").ok()?;
            Some((fp.clone(), der.into_iter().next()?))
        })
        .collect()
}

fn short(fp: &str) -> &str {
    fp.get(..12).unwrap_or(fp)
}

/// One line per CA: subject, fingerprint, expiry, current or retiring until when.
fn cas(bundle: &Bundle, ns: &str, opts: &Options) -> Vec<Line> {
    let mut lines: Vec<Line> = bundle
        .cas
        .iter()
        .map(|(fp, e)| {
            let check = format!("{CHECK} CA {}", short(fp));
            let left = e.ca.not_after - opts.now;
            let expiry = format!("expires {} (in {})", e.record().not_after, human(left));
            match e.retain {
                Retain::Current if left < opts.expiry_warning_secs => Line::warn(
                    check,
                    format!("{}, {expiry}: current, and close to its end", e.ca.subject),
                    "rotate the workload CA now (README \"Rotating the workload CA\")",
                ),
                Retain::Current => Line::pass(check, format!("{}, {expiry}: current", e.ca.subject)),
                Retain::Until(t) => Line::pass(
                    check,
                    format!(
                        "{}, {expiry}: previous CA, trusted until {} (in {}); retire it early once no workload certificate is from it: kubectl -n {ns} annotate configmap {TRUST_MASTER_CONFIGMAP} {TRUST_RETIRE}={} --overwrite",
                        e.ca.subject,
                        e.record().retain_until,
                        human(t - opts.now),
                        short(fp)
                    ),
                ),
            }
        })
        .collect();
    if bundle.current().next().is_none() {
        lines.push(Line::warn(
            CHECK,
            "no CA in the bundle is current: the webhook has not seen the issuer's CA Secret",
            "check the issuer's CA Secret exists and the webhook's logs",
        ));
    }
    lines
}

/// Live workload certificates (valid at `now`) and the bundle CA each comes from.
fn live_workloads(
    secrets: &[Secret],
    cas: &BTreeMap<String, CertificateDer<'static>>,
    now: i64,
) -> Vec<Workload> {
    secrets
        .iter()
        .filter_map(|s| {
            let pem = s.data.as_ref()?.get("tls.crt")?;
            let chain = certs::pem_certs(&pem.0, "tls.crt").ok()?;
            if certs::not_after(chain.first()?).ok()? <= now {
                return None;
            }
            let issued_by = |with: bool| {
                cas.iter()
                    .find(|(_, ca)| certs::verifies(std::slice::from_ref(*ca), &chain, with, now))
                    .map(|(fp, _)| fp.clone())
            };
            let ca = issued_by(false).or_else(|| issued_by(true));
            Some(Workload {
                name: format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()),
                chain,
                ca,
            })
        })
        .collect()
}

/// How many live workload certificates are not from a current CA.
fn workload_line(bundle: &Bundle, workloads: &[Workload]) -> Line {
    let check = "workload certificates";
    let is_current = |fp: &String| {
        bundle
            .cas
            .get(fp)
            .is_some_and(|e| e.retain == Retain::Current)
    };
    let untrusted: Vec<&str> = workloads
        .iter()
        .filter(|w| w.ca.is_none())
        .map(|w| w.name.as_str())
        .collect();
    let previous: Vec<&Workload> = workloads
        .iter()
        .filter(|w| w.ca.as_ref().is_some_and(|fp| !is_current(fp)))
        .collect();
    let n = workloads.len();
    if !untrusted.is_empty() {
        return Line::fail(
            check,
            format!(
                "{} of {n} live workload certificates chain to no CA in the trust bundle ({}): every injected pod refuses them",
                untrusted.len(),
                untrusted.join(", ")
            ),
            "re-issue them from the current CA (cmctl renew -n <namespace> <certificate>), or if a CA was retired too early, remove it from the kube-mtls.io/retire annotation: a retired CA does not come back, so re-issue",
        );
    }
    if previous.is_empty() {
        return Line::pass(
            check,
            format!("{n} live workload certificates, all from the current CA"),
        );
    }
    let namespaces: BTreeSet<&str> = previous
        .iter()
        .filter_map(|w| w.name.split_once('/').map(|(ns, _)| ns))
        .collect();
    Line::warn(
        check,
        format!(
            "{} of {n} live workload certificates are still from a previous CA (in {}): the rotation is not finished",
            previous.len(),
            namespaces.iter().copied().collect::<Vec<_>>().join(", ")
        ),
        format!(
            "re-issue them: {} (or wait for their renewal); then retire the previous CA",
            namespaces
                .iter()
                .map(|ns| format!("cmctl renew --all -n {ns}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    )
}

/// One line per namespace with workload certificates or a `kube-mtls-trust`.
fn namespace_lines(
    bundle: &Bundle,
    state: &State,
    workloads: &[Workload],
    logs: &str,
    now: i64,
) -> Vec<Line> {
    let have: BTreeMap<String, String> = state
        .configmaps
        .iter()
        .filter_map(|c| {
            let pem = c.data.as_ref()?.get(TRUST_BUNDLE_KEY)?.clone();
            Some((c.namespace()?, pem))
        })
        .collect();
    let with_workloads: BTreeSet<String> =
        state.secrets.iter().filter_map(|s| s.namespace()).collect();
    let namespaces: BTreeSet<&String> = have.keys().chain(with_workloads.iter()).collect();
    namespaces
        .into_iter()
        .map(|ns| namespace_line(ns, have.get(ns), bundle, workloads, logs, now))
        .collect()
}

fn namespace_line(
    ns: &str,
    pem: Option<&String>,
    bundle: &Bundle,
    workloads: &[Workload],
    logs: &str,
    now: i64,
) -> Line {
    let check = format!("{CHECK}/{ns}");
    let fix = format!(
        "the webhook's controller keeps it equal to {TRUST_MASTER_CONFIGMAP}: check its logs ({logs}); kubectl -n {ns} delete configmap {TRUST_CONFIGMAP} makes it write it again"
    );
    let Some(pem) = pem else {
        return Line::fail(
            check,
            format!(
                "no ConfigMap {TRUST_CONFIGMAP}: injected pods here cannot mount their trust bundle and do not start"
            ),
            format!(
                "the webhook's controller creates it in every namespace with Certificates: check its logs ({logs}); its RBAC must allow create and patch on configmaps (the chart's rbac.yaml)"
            ),
        );
    };
    let anchors = certs::pem_certs(pem.as_bytes(), "kube-mtls-trust").unwrap_or_default();
    let refused: Vec<&str> = workloads
        .iter()
        .filter(|w| !certs::verifies(&anchors, &w.chain, true, now))
        .map(|w| w.name.as_str())
        .collect();
    if !refused.is_empty() {
        return Line::fail(
            check,
            format!(
                "{TRUST_CONFIGMAP} lacks the CA of {} live workload certificates ({}): pods here refuse them",
                refused.len(),
                refused.join(", ")
            ),
            fix,
        );
    }
    let missing = missing_from(bundle, pem);
    if !missing.is_empty() {
        return Line::warn(
            check,
            format!(
                "{TRUST_CONFIGMAP} does not have every CA of the trust bundle yet (missing {})",
                missing.join(", ")
            ),
            format!("wait a few seconds and check again; if it stays, {fix}"),
        );
    }
    Line::pass(
        check,
        format!(
            "{TRUST_CONFIGMAP} has every CA of the trust bundle ({}); pods see a change within about a minute",
            bundle.cas.len()
        ),
    )
}

/// The CAs of the master that a namespace's PEM does not have yet.
fn missing_from(bundle: &Bundle, pem: &str) -> Vec<String> {
    bundle
        .cas
        .iter()
        .filter(|(_, e)| !pem.contains(e.ca.pem.trim()))
        .map(|(fp, e)| format!("{} {}", e.ca.subject, short(fp)))
        .collect()
}
