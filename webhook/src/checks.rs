//! What the pod's spec (not its annotations) means for the injection.
//!
//! - [`proxy_uid`]: a pod or container that runs as the sidecar's UID is
//!   refused. The init rules never redirect that UID's traffic (it is how the
//!   sidecar's own connections get out), so such an app's calls would skip
//!   the sidecar and leave in plaintext.
//! - [`soft_gaps`]: warnings (AdmissionReview `warnings`, `warning:` lines of
//!   `inject`) for pods that are injected but will not fully work as the user
//!   probably expects: gRPC ports the sidecar will speak HTTP/1.1 to, and init
//!   containers that call captured ports before any proxy runs.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::annotations::{PREFIX, PROXY_UID, Rejection};
use crate::resolve::Resolved;

fn containers<'a>(pod: &'a Value, list: &str) -> impl Iterator<Item = &'a Value> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn name(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or("")
}

/// Refuses a pod whose securityContext, or any (init) container's, runs as
/// the sidecar's UID.
pub fn proxy_uid(pod: &Value) -> Result<(), Rejection> {
    let runs_as_proxy = |v: Option<&Value>| {
        v.and_then(|s| s.pointer("/runAsUser"))
            .and_then(Value::as_i64)
            == Some(i64::from(PROXY_UID))
    };
    let mut subjects = Vec::new();
    if runs_as_proxy(pod.pointer("/spec/securityContext")) {
        subjects.push("pod spec.securityContext.runAsUser".to_owned());
    }
    for (list, what) in [
        ("initContainers", "init container"),
        ("containers", "container"),
    ] {
        for c in containers(pod, list) {
            if runs_as_proxy(c.get("securityContext")) {
                subjects.push(format!("{what} {} securityContext.runAsUser", name(c)));
            }
        }
    }
    if subjects.is_empty() {
        return Ok(());
    }
    Err(Rejection {
        subject: subjects.join(", "),
        problem: format!(
            "{PROXY_UID} is the kube-mtls sidecar's UID, whose traffic is never redirected through the sidecar, so this workload's calls would bypass it and leave in plaintext"
        ),
        fix: format!(
            "run the pod and its containers as another UID (runAsUser other than {PROXY_UID})"
        ),
    })
}

/// Warnings for gaps that do not stop the pod from being injected.
pub fn soft_gaps(pod: &Value, r: &Resolved) -> Vec<String> {
    let mut warnings = h2c_gaps(pod, r);
    warnings.extend(init_before_proxy(pod, r));
    warnings
}

/// Whether a container port looks like gRPC or HTTP/2 cleartext.
fn h2c_port(p: &Value) -> bool {
    let name = p.get("name").and_then(Value::as_str).unwrap_or("");
    let app = p.get("appProtocol").and_then(Value::as_str).unwrap_or("");
    ["grpc", "h2c"]
        .iter()
        .any(|k| name == *k || name.starts_with(&format!("{k}-")))
        || matches!(app, "grpc" | "h2c" | "kubernetes.io/h2c")
}

/// Captured app ports that speak gRPC/h2c (by port name, appProtocol or a
/// gRPC probe) but are not in `h2-ports`: the sidecar will speak HTTP/1.1.
fn h2c_gaps(pod: &Value, r: &Resolved) -> Vec<String> {
    let mut why: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for c in containers(pod, "containers") {
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let port = p.get("containerPort").and_then(Value::as_u64);
            if let Some(port) = port.and_then(|n| u16::try_from(n).ok())
                && h2c_port(p)
            {
                let label = p.get("name").and_then(Value::as_str).unwrap_or("h2c");
                why.entry(port)
                    .or_default()
                    .insert(format!("container {} port {label:?}", name(c)));
            }
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let port = c
                .pointer(&format!("/{probe}/grpc/port"))
                .and_then(Value::as_u64);
            if let Some(port) = port.and_then(|n| u16::try_from(n).ok()) {
                why.entry(port)
                    .or_default()
                    .insert(format!("container {} gRPC {probe}", name(c)));
            }
        }
    }
    why.into_iter()
        .filter(|(port, _)| r.captures(*port) && !r.h2_ports.contains(port) && !r.tcp_ports.contains(port))
        .map(|(port, reasons)| {
            let reasons = reasons.into_iter().collect::<Vec<_>>().join(", ");
            format!(
                "kube-mtls: port {port} looks like gRPC/HTTP/2 ({reasons}) but is not in {PREFIX}h2-ports, so the sidecar will speak HTTP/1.1 to it; add {port} to {PREFIX}h2-ports"
            )
        })
        .collect()
}

/// With a regular (non-native) sidecar and outbound capture, the user's init
/// containers run after the redirect rules but before the proxy exists.
fn init_before_proxy(pod: &Value, r: &Resolved) -> Option<String> {
    if r.native_sidecar || r.outbound_ports.is_empty() {
        return None;
    }
    let names: Vec<&str> = containers(pod, "initContainers").map(name).collect();
    if names.is_empty() {
        return None;
    }
    let ports: Vec<String> = r.outbound_ports.iter().map(u16::to_string).collect();
    Some(format!(
        "kube-mtls: init containers {} run before the sidecar starts (the sidecar is a regular container, {PREFIX}native-sidecar is false), so their calls to {PREFIX}outbound-ports {} are redirected to a proxy that is not running yet and fail; use a native sidecar ({PREFIX}native-sidecar: \"true\", Kubernetes >= 1.29) or add their destinations to {PREFIX}skip-outbound-cidrs",
        names.join(", "),
        ports.join(",")
    ))
}
