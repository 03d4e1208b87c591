//! Pod Security of every opted-in namespace. The injected init container adds
//! NET_ADMIN and NET_RAW to install its iptables rules; the baseline and
//! restricted levels do not admit those capabilities, so a namespace that
//! enforces either refuses every injected pod. Said here before pods fail.

use kube::ResourceExt;

use super::{Cluster, Line};
use crate::contract::{INIT_NAME, PSA_AUDIT, PSA_ENFORCE, PSA_WARN};

fn denies(level: &str) -> bool {
    matches!(level, "baseline" | "restricted")
}

/// One line per opted-in namespace.
pub fn pod_security(c: &Cluster) -> Vec<Line> {
    if c.opted_in.is_empty() {
        return vec![Line::skip("pod-security", "no namespace has opted in yet")];
    }
    c.opted_in.iter().filter_map(|ns| c.namespace(ns).map(|n| (ns, n.labels()))).map(|(ns, labels)| {
        let check = format!("pod-security/{ns}");
        let fix = format!(
            "kubectl label namespace {ns} {PSA_ENFORCE}=privileged --overwrite (the {INIT_NAME} init container needs NET_ADMIN and NET_RAW), or opt this namespace out"
        );
        let enforce = labels.get(PSA_ENFORCE).map(String::as_str);
        let soft: Vec<String> = [PSA_WARN, PSA_AUDIT]
            .into_iter()
            .filter_map(|l| labels.get(l).filter(|v| denies(v)).map(|v| format!("{l}={v}")))
            .collect();
        match enforce {
            Some(level) if denies(level) => Line::fail(
                check,
                format!("enforces Pod Security {level}, which does not admit the init container's NET_ADMIN and NET_RAW: injected pods will be refused"),
                fix,
            ),
            _ if !soft.is_empty() => Line::warn(
                check,
                format!("{}: every injected pod gets a Pod Security warning or audit entry for NET_ADMIN and NET_RAW", soft.join(", ")),
                fix,
            ),
            Some(level) => Line::pass(check, format!("enforces Pod Security {level}: the init container is admitted")),
            None => Line::pass(check, "no Pod Security label: the cluster's default level applies (privileged unless configured otherwise)"),
        }
    }).collect()
}
