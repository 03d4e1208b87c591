//! Pod annotations (`kube-mtls.io/*`): their names, what each means, how
//! they are read from a pod, and the [`Rejection`] a bad one earns. Turning
//! them into settings is [`crate::resolve`]'s work.

use std::collections::BTreeSet;

use kube_mtls_contract::ports;
use serde_json::Value;

pub use kube_mtls_contract::names::{
    ADMIN_PORT, INBOUND_PORT, INJECT, OUTBOUND_PORT, PREFIX, PROFILE, PROXY_UID, STATUS,
};

/// Every annotation a pod may set, with what it means and its default:
/// docs/contract.md's table is written from this list.
pub const DOCUMENTED: &[(&str, &str, &str)] = &[
    (
        "inject",
        "`enabled` or `disabled`: opt this pod in or out",
        "namespace label `kube-mtls.io/inject`",
    ),
    (
        "inbound-ports",
        "ports captured inbound, comma-separated numbers or container port names, or `*`",
        "the pod's declared container ports; `*` if none",
    ),
    (
        "skip-inbound-ports",
        "ports that bypass the sidecar",
        "none",
    ),
    (
        "tcp-ports",
        "ports proxied as raw TCP (databases, non-HTTP)",
        "none: HTTP",
    ),
    (
        "h2-ports",
        "ports whose app speaks HTTP/2 cleartext (gRPC)",
        "none",
    ),
    (
        "allowed-clients",
        "allowed caller identities: SPIFFE ID patterns (`*` = one segment) or DNS names",
        "any identity in the trust domain",
    ),
    (
        "outbound-ports",
        "destination ports whose plaintext calls leave as mTLS",
        "none",
    ),
    (
        "skip-outbound-cidrs",
        "destinations never captured outbound",
        "none",
    ),
    (
        "dns-names",
        "extra DNS names in the pod's certificate",
        "none",
    ),
    (
        "issuer",
        "`ClusterIssuer/<name>` or `Issuer/<name>` that signs the certificate",
        "webhook `--issuer`",
    ),
    (
        "secret",
        "an existing Secret (tls.crt, tls.key, ca.crt) to use; no Certificate is made",
        "`kube-mtls-<service account>-tls`",
    ),
    (
        "sidecar-cpu-request",
        "sidecar CPU request; set alone above the limit, it raises the limit (with a warning)",
        "`10m`",
    ),
    (
        "sidecar-memory-request",
        "sidecar memory request; set alone above the limit, it raises the limit (with a warning)",
        "`16Mi`",
    ),
    (
        "sidecar-cpu-limit",
        "sidecar CPU limit; set alone below the request, it lowers the request (with a warning); set with a larger request: rejected",
        "none",
    ),
    (
        "sidecar-memory-limit",
        "sidecar memory limit; set alone below the request, it lowers the request (with a warning); set with a larger request: rejected",
        "`64Mi`",
    ),
    (
        "profile",
        "name of an `MtlsProfile` in the pod's namespace",
        "the namespace annotation `kube-mtls.io/profile`",
    ),
    (
        "mode",
        "`strict`: mTLS only; `permissive`: on HTTP ports, plaintext callers reach the app too (without any identity), to roll out gradually",
        "the profile's `mode`, else the webhook's `--default-mode` (`strict`)",
    ),
    (
        "policy",
        "`enforce`: callers off `allowed-clients` are refused; `audit`: they are let through, logged and counted as `would_deny`",
        "the profile's `policy`, else the webhook's `--default-policy` (`enforce`)",
    ),
    (
        "native-sidecar",
        "`true`: sidecar as a native sidecar (init container, Kubernetes >= 1.29); `false`: a regular container",
        "from the API server version",
    ),
];

/// A pod the webhook must refuse, and why.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{subject}: {problem}. Fix: {fix}")]
pub struct Rejection {
    /// e.g. `annotation kube-mtls.io/tcp-ports`.
    pub subject: String,
    pub problem: String,
    pub fix: String,
}

pub(crate) fn reject(name: &str, problem: impl Into<String>, fix: impl Into<String>) -> Rejection {
    Rejection {
        subject: format!("annotation {PREFIX}{name}"),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The pod's annotations.
pub fn annotations(pod: &Value) -> serde_json::Map<String, Value> {
    pod.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

pub(crate) fn annotation<'a>(
    ann: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Option<&'a str> {
    ann.get(&format!("{PREFIX}{name}"))
        .and_then(Value::as_str)
        .map(str::trim)
}

/// Named container ports of the pod's app containers (name -> number).
pub(crate) fn named_ports(pod: &Value) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(num)) = (
                p.get("name").and_then(Value::as_str),
                p.get("containerPort").and_then(Value::as_u64),
            ) && let Ok(num) = u16::try_from(num)
            {
                out.push((name.to_owned(), num));
            }
        }
    }
    out
}

/// The pod's declared TCP container ports.
pub fn declared_ports(pod: &Value) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let tcp = p
                .get("protocol")
                .and_then(Value::as_str)
                .is_none_or(|proto| proto == "TCP");
            if tcp
                && let Some(n) = p
                    .get("containerPort")
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok())
            {
                out.insert(n);
            }
        }
    }
    out
}

/// A comma-separated annotation as its trimmed, non-empty items.
pub(crate) fn strings(ann: &serde_json::Map<String, Value>, name: &str) -> Option<Vec<String>> {
    annotation(ann, name).map(|v| ports::items(v).map(str::to_owned).collect())
}
