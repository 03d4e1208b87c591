//! `kubectl mtls status`: every injected workload with its identity, mode and
//! policy, allowed clients and certificate expiry, then the pods that run an
//! older sidecar than the webhook injects now, with the command that restarts them.

use crate::certs::human;
use crate::output::table;
use crate::workloads::{Inventory, Workload};

fn allowed(w: &Workload) -> String {
    if w.allowed_clients.is_empty() {
        format!("any in {}", w.trust_domain)
    } else {
        w.allowed_clients.join(",")
    }
}

fn expiry(w: &Workload, now: i64) -> String {
    match w.certificate_not_after {
        Some(t) if t <= now => format!("expired {} ago", human(now - t)),
        Some(t) => format!("in {}", human(t - now)),
        None => "not issued".into(),
    }
}

fn restart(w: &Workload) -> String {
    let n = w.outdated_pods().count();
    if n == 0 {
        "-".into()
    } else {
        format!("{n}/{}", w.pods.len())
    }
}

/// The command that replaces a workload's pods.
pub fn restart_command(w: &Workload) -> String {
    match w.kind.as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" => format!(
            "kubectl -n {} rollout restart {}/{}",
            w.namespace,
            w.kind.to_ascii_lowercase(),
            w.name
        ),
        _ => format!(
            "kubectl -n {} delete pod {}",
            w.namespace,
            w.outdated_pods()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

const HEADERS: [&str; 8] = [
    "WORKLOAD",
    "IDENTITY",
    "MODE",
    "POLICY",
    "ALLOWED CLIENTS",
    "CERT EXPIRES",
    "PODS",
    "RESTART",
];

fn row(w: &Workload, all_namespaces: bool, now: i64) -> Vec<String> {
    let identity = match &w.error {
        Some(_) => "(unresolved)".to_owned(),
        None => w.identity.clone(),
    };
    let mut r = vec![
        format!("{}/{}", w.kind.to_ascii_lowercase(), w.name),
        identity,
        w.mode.clone(),
        w.policy.clone(),
        allowed(w),
        expiry(w, now),
        w.pods.len().to_string(),
        restart(w),
    ];
    if all_namespaces {
        r.insert(0, w.namespace.clone());
    }
    r
}

/// The pods to restart, with the command for each workload.
fn outdated(inv: &Inventory) -> String {
    let mut out = String::new();
    for w in inv
        .workloads
        .iter()
        .filter(|w| w.outdated_pods().next().is_some())
    {
        for p in w.outdated_pods() {
            out.push_str(&format!(
                "  {}/{}   {}\n",
                w.namespace, p.name, p.sidecar_image
            ));
        }
        out.push_str(&format!("  -> {}\n", restart_command(w)));
    }
    if out.is_empty() {
        return out;
    }
    format!(
        "\nPods running an older sidecar than the webhook injects ({}); restart them:\n{out}",
        inv.webhook.injection.sidecar_image
    )
}

/// The status table; `all_namespaces` adds the NAMESPACE column. Then why
/// any workload does not resolve, and the pods to restart.
pub fn render(inv: &Inventory, all_namespaces: bool, now: i64) -> String {
    if inv.workloads.is_empty() {
        return "No injected workloads found.\n".into();
    }
    let mut headers = HEADERS.to_vec();
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = inv
        .workloads
        .iter()
        .map(|w| row(w, all_namespaces, now))
        .collect();
    let mut out = table(&headers, &rows);
    for w in &inv.workloads {
        if let Some(e) = &w.error {
            out.push_str(&format!("\n{}/{}: {e}\n", w.namespace, w.name));
        }
    }
    out.push_str(&outdated(inv));
    out
}
