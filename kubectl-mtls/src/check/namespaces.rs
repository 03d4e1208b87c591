//! Pod Security of every opted-in namespace. In the default mode the injected
//! init container adds NET_ADMIN and NET_RAW to install its iptables rules;
//! the baseline and restricted levels do not admit those capabilities, so a
//! namespace that enforces either refuses every injected pod. Said here
//! before pods fail. In CNI mode (the webhook's `--cni-mode`) the CNI plugin
//! installs the rules and no container in the pod has a capability, so those
//! namespaces pass.

use kube::ResourceExt;

use super::{Cluster, Line};
use crate::contract::{INIT_NAME, PSA_AUDIT, PSA_ENFORCE, PSA_WARN, VALIDATE_NAME};

fn denies(level: &str) -> bool {
    matches!(level, "baseline" | "restricted")
}

/// One line per opted-in namespace.
pub fn pod_security(c: &Cluster) -> Vec<Line> {
    if c.opted_in.is_empty() {
        return vec![Line::skip("pod-security", "no namespace has opted in yet")];
    }
    let cni = c
        .install
        .as_ref()
        .is_some_and(|i| i.flags.injection.cni_mode);
    c.opted_in
        .iter()
        .filter_map(|ns| c.namespace(ns).map(|n| (ns, n.labels())))
        .map(|(ns, labels)| {
            let check = format!("pod-security/{ns}");
            let enforce = labels.get(PSA_ENFORCE).map(String::as_str);
            let soft: Vec<String> = [PSA_WARN, PSA_AUDIT]
                .into_iter()
                .filter_map(|l| {
                    labels
                        .get(l)
                        .filter(|v| denies(v))
                        .map(|v| format!("{l}={v}"))
                })
                .collect();
            if cni {
                cni_mode(check, enforce)
            } else {
                init_mode(check, ns, enforce, &soft)
            }
        })
        .collect()
}

/// With the privileged init container: baseline and restricted refuse it.
fn init_mode(check: String, ns: &str, enforce: Option<&str>, soft: &[String]) -> Line {
    let fix = format!(
        "helm upgrade ... --set cni.enabled=true (CNI mode: no NET_ADMIN in pods), or kubectl label namespace {ns} {PSA_ENFORCE}=privileged --overwrite (the {INIT_NAME} init container needs NET_ADMIN and NET_RAW), or opt this namespace out"
    );
    match enforce {
        Some(level) if denies(level) => Line::fail(
            check,
            format!(
                "enforces Pod Security {level}, which does not admit the init container's NET_ADMIN and NET_RAW: injected pods will be refused"
            ),
            fix,
        ),
        _ if !soft.is_empty() => Line::warn(
            check,
            format!(
                "{}: every injected pod gets a Pod Security warning or audit entry for NET_ADMIN and NET_RAW",
                soft.join(", ")
            ),
            fix,
        ),
        Some(level) => Line::pass(
            check,
            format!("enforces Pod Security {level}: the init container is admitted"),
        ),
        None => Line::pass(
            check,
            "no Pod Security label: the cluster's default level applies (privileged unless configured otherwise)",
        ),
    }
}

/// CNI mode: what kube-mtls adds passes every level.
fn cni_mode(check: String, enforce: Option<&str>) -> Line {
    let why = format!(
        "CNI mode: the CNI plugin installs the rules, no container kube-mtls adds has NET_ADMIN, NET_RAW or any other capability, and {VALIDATE_NAME} and the sidecar run as non-root"
    );
    match enforce {
        Some("restricted") => Line::pass(
            check,
            format!(
                "enforces Pod Security restricted, which admits injected pods whose own containers comply ({why})"
            ),
        ),
        Some(level) => Line::pass(
            check,
            format!("enforces Pod Security {level}, which admits injected pods ({why})"),
        ),
        None => Line::pass(
            check,
            format!("no Pod Security label: injected pods are admitted at any level ({why})"),
        ),
    }
}
